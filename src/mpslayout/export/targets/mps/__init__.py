"""The MPS target: one ``NAME.weights.bin`` (and bias, ranges, gate files) per layer in the
layouts MPSCNN reads (docs/layouts.md), and ``manifest.json`` (:mod:`.manifest`), written
into a temporary folder and renamed into place (:mod:`.writer`)."""
