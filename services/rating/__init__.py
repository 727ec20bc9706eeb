"""Rating: prices metered usage with the contract terms in force at each second (R4), keeps both
sides of every allocation-hour (R13), draws prepaid wallets down (R8) and watches credit limits (R9).

``domain`` is the pure core; the I/O shell (handlers, store) is built on top of it.
"""
