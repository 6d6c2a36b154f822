"""The workbook: the design review (`review`), its report (`report`), plots (`plots`),
widgets (`widgets`), example state models (`examples`) and the notebooks it ships
(`notebooks/`). It needs the `workbook` extra (pandas, matplotlib, papermill, ipywidgets).
"""
