"""Attribution methods: maps of what in an input drives a score."""
