"""Config blocks shared by every experiment program."""
