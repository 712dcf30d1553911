"""Test support shared by tests/ and bench/: servers on 127.0.0.1, fakes, AWS stand-ins, checkpoint writers.

Never imported by the product. Heavy or test-only packages (moto, playwright, torch) are imported by the modules
that need them, so importing this package is free.
"""
