"""Records, tokenization and DataModules. ``quickstart/`` holds a small shipped multi-task set."""
