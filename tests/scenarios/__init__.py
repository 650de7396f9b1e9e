"""Scripts the tests run inside network namespaces they create."""
