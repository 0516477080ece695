"""The pickle model: how the validator reads torch's ``data.pkl`` without running it.

A load goes through these modules, in order (each imports only those above it):

- :mod:`.opcodes`: the pickle opcodes, named as the stdlib ``pickle`` module names them;
- :mod:`.qualnames`: the dotted name each loader looks a pickle's global up by;
- :mod:`.stackitems`: what the pre-scan knows of each stack item (hash bounds, targets);
- :mod:`.templates`: the pre-scan's run accelerators (whole runs of records at C speed);
- :mod:`.prescan`: the pre-scan, one pass over the opcodes (memo, hash and hash-flood bombs,
  FRAME straddles, the forms torch's loader refuses) before anything is built;
- :mod:`.context`: the per-load context (made objects, library mode, the GC pause);
- :mod:`.standins`: what stands in for each allowed global (tensors, storages, numpy arrays,
  as torch's own rebuild functions would check them), and the BUILD rules;
- :mod:`.allowlist`: which globals a file may name, and what each resolves to;
- :mod:`.unpickler`: **the unpickler** (``read_model``, ``load_structure``): the pre-scan, then
  the restricted C unpickler, into a lazy structure (:mod:`virnucpro_store.lazy`);
- :mod:`.walk`: the walk over a lazy structure (every tensor and array, with its path).
"""
