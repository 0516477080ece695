"""Storage backends, one module each; :mod:`.base` defines the primitives they implement."""
