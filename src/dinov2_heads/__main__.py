"""``python -m dinov2_heads`` runs the command line."""

from dinov2_heads.cli import entry_point

if __name__ == "__main__":
    entry_point()
