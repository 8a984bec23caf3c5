"""Where evacuated VMs go, pure: the host view and the VMs' demands as values (model.py), the planner that
picks a destination for each VM or says why none fits (place.py), an independent checker of any plan against
the rules (check.py), a seeded cloud generator for tests and the bench (simulate.py), and the book of the
claims a destination grants on its room (claims.py). A new placement rule goes into place.py and, written
again independently, into check.py. Imports the standard library only."""
