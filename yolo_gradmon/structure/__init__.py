"""The model's structure: which parameters form each monitored module (:mod:`.layout`), the top-level layer graph
(:mod:`.graph`: consumers, paths to the head, cuts) and the activation registry (:mod:`.activations`)."""
