// The API reference at /docs: Swagger UI showing this service's /openapi.json.
// validatorUrl: null keeps Swagger UI from sending the document to validator.swagger.io.
window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  defaultModelsExpandDepth: 0,
  displayRequestDuration: true,
  persistAuthorization: false,
});
