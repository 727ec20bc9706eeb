"""Metering: lifecycle events → GPU-seconds per allocation per UTC hour (R2, R3, R7).

``domain`` is the pure core (no I/O, no clock); the I/O shell (handlers, store) is built on it.
"""
