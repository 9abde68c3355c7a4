"""Real datasets read in place from installed registry packages (never copied, never committed)."""
