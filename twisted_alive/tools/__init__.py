"""The command-line tools: cli, probe, demo, bench. ``import twisted_alive`` never loads them."""
