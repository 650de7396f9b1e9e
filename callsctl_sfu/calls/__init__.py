"""The call model and the manager of live calls."""
