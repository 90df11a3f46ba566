"""The pure domain core: no Kafka, Faust or cloud SDK imports.

The live worker and replay both drive these classes, which is what makes their output identical.
"""
