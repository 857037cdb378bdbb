"""The playground's page, script and style sheet (package data, served by engine.api.playground)."""
