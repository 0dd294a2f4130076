"""The `nexus` Pulumi provider plugin: the lab's layers as typed resources (issue 14).

`pulumi-resource-nexus` in this directory is the plugin's executable; it serves
`provider.NexusProvider` from the checkout's .venv. `scripts/setup` installs it, so
`pulumi plugin ls` lists it; `pulumi package get-schema` prints its schema.
"""

NAME = "nexus"
# The project's version (pyproject.toml; a unit test keeps the two equal).
VERSION = "0.1.0"
