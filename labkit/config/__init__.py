"""Config helpers: resolvers and validation."""
