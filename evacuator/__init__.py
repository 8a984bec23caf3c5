"""evacuator package."""
