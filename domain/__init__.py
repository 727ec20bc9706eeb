"""The domain layer: billing knowledge shared by the services (imports ``schemas`` and ``libs``, never a service)."""
