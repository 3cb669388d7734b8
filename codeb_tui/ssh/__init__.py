"""The console served over SSH (`codeb ssh-serve`): server.py (asyncssh, the pty bridge, the
session limits) and operators.py (who may connect, with which key, team and role)."""
