"""Package data: icons, the style sheet and bundled texts. Find files through :func:`desktop.resources.path`."""
