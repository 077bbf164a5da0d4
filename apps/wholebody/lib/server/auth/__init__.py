"""Built-in accounts for the server: users file, signed tokens, a role check in front of every
route, a login page for OHIF, CORS, login throttling, an audit log and the refuse-to-start rule.

MONAI Label's own authentication needs a Keycloak server; sites that run one keep it (these
built-in accounts are then off). ``install`` (``install.py``) puts everything in place."""
