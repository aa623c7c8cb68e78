"""Tasks: the Task extension point and the built-in tasks (classify, extract)."""
