"""Index bodies, templates and Kibana saved objects, as data: a package only so that an installed
reranker finds them (``importlib.resources.files("es_mappings")``)."""
