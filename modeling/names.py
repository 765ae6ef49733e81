"""Names that code without torch needs too (the Serve gateway and job board validate requests against them but
never run a model, so their replicas need not load torch): MAGVIT's COMMIT task ids and the mask schedules."""

TASKS = ("fp", "fi", "opc", "opv", "oph", "opd", "ipc", "ipd", "cg", "cfp")  # MAGVIT Table 1's ten tasks
CLASS_TASKS = ("cg", "cfp")  # tasks whose prefix carries the class token
SCHEDULE_NAMES = ("cosine", "linear")  # `modeling.masking.SCHEDULES`
