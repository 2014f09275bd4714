"""`kgb consume metrics`: token usage and cost by model, session, conversation kind and day."""
