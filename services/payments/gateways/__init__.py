"""Card and debit gateways behind one port (:mod:`services.payments.gateways.port`)."""
