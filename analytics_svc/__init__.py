"""analytics_svc: records every ProductSold event in MongoDB and answers sales questions."""
