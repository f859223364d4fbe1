"""Where a job's model comes from: a built-in architecture, an uploaded Keras file, or an
operator's plugin. The service side (no Keras here): plain descriptions, the upload's archive
checks, the store of uploaded files and the registry of the plugins live workers offer."""
