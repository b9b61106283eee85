"""The roles a column of a user's annotation file can play (`--col ROLE=COLUMN`, `[columns]` in featcache.toml).

Here, not in the CSV adapter that reads them, so checking a config file (every command does) imports no pandas.
"""

ROLES = ("image", "prompt_image", "text", "group", "generator", "target", "image_dir", "prompt_dir")
