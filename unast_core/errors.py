"""The one exception type users see: its message is a single line that says what to do."""


class UnastError(Exception):
    """A user-facing error (bad input, impossible budget, missing teacher). The CLI prints it on one
    line and exits non-zero; anything else is a bug and keeps its traceback."""


class InfeasibleBudget(UnastError):
    """No architecture in the pool meets the budget; `reachable` holds the smallest reachable
    fraction of each constrained cost."""

    def __init__(self, message: str, reachable: dict[str, float]):
        super().__init__(message)
        self.reachable = reachable
