from cinevox.cli import entry

entry()
