"""The workshop's labs: one module per lesson, each with the lab's first version of the state
code (`break_it`), and `check(...)`, which runs the attendee's fix under the lab's own fault
schedule and answers with a `Result` (✔ or ✘ and a hint that names what went wrong, never
the answer). The notebooks in `notebooks/labs/` call them; `attendee` strips the trainer's
solutions out of those notebooks.

- `need_state`: prove you need state (the meta-lesson)
- `degrade`: degrade, don't crash
- `bounded`: bounded state
- `consistency`: consistency per kind of state
- `versions`: state outlives code
- `health`: observable state health
"""

LABS = ("need_state", "degrade", "bounded", "consistency", "versions", "health")
