"""Built-in plugins, each written against trio_mta.hooks public names only."""
