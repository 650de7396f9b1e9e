"""`callsctl top`: a live terminal view of a running server's calls, sessions and health.

The package is split so each part can be tested on its own:

- client.py   top's snapshot and host controls on the shared admin client
              (callsctl/adminclient.py, which does the HTTP);
- model.py    what the TUI knows: the latest snapshot, rates and histories (pure);
- view.py     turning that knowledge into table rows and colours (pure);
- widgets.py, screens.py, app.py   the textual UI;
- command.py  the `callsctl top` typer command, including `--once --json`.

Only command.py is imported when the CLI starts; textual and the TUI are
imported when `top` actually runs, so other commands stay fast.
"""
