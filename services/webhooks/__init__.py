"""The webhooks worker: processors' signed HTTP callbacks → verified, deduplicated ``processor.events.v1``."""
