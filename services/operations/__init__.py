"""What operators do to data Settle set aside: held items (``settle held``), quarantined invoice closes
(``settle invoices quarantine``); every action audited in ``settle.operator_actions``."""
