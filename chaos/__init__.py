"""Fault, chaos and bad-input scenarios that try to lose events, and report what they found.

Run ``python -m chaos.run [--short|--long] [--only 1,3]``; ``tests/test_chaos.py`` runs the short
profile under pytest. Every scenario counts against the load generator's own log, never against
what the bridge says about itself.
"""
