"""Looking at recorded sessions and curating them: the review journal of marks, and the review page."""
