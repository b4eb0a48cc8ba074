"""Measuring on the device: parameter statistics around the optimizer step (:mod:`.params`), gradient flow through
depth (:mod:`.flow`), activation health (:mod:`.health`), their wiring to one model (:mod:`.depth`), and the one
schedule that decides which of them runs at each optimizer step and forward/backward pass (:mod:`.schedule`)."""
