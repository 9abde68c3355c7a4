"""The Faust worker: declarations (app, topics, tables), thin agents, web views."""
