"""The product's own jobs (the seed jobs of BookWorm's Scheduler service) and the events they publish."""
