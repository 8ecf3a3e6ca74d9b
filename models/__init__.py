"""The vocabulary the levels exchange: every data model's namespace once (`models.ns`), and
one reader and builder per YANG module that crosses a level boundary, used by the producer
and the consumer of the same data. It imports the engine's XML helpers and no level."""
