"""Raw data: robot episodes, the actionless video corpus, and their on-disk formats."""
