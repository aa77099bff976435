"""The queue bridge: requests from RabbitMQ, answers into Redis, with bounded retries and dead
letters (``servekit bridge``, ``servekit ask``), and the private brokers it can run."""
