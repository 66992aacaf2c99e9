"""Amazon Selling Partner API: spec, LWA auth, datasets and sandbox."""
