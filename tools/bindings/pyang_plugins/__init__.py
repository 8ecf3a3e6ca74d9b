"""pyang plugins used when generating bindings; pyang loads them with --plugindir."""
