"""The commands that read recorded sessions; never imported while serving."""
