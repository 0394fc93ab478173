/** @type {AppTypes.Config} */
// OHIF viewer configuration for imaging-archive: one DICOMweb data source, the archive.
//
// ohif.mjs serves this file in place of the dist's own app-config.js, preceded by a line that sets
// window.IMAGING_ARCHIVE = { dicomWebRoot, thumbnailRendering } from its command line. Served by
// anything else, it points at `imaging-archive serve` on its default address.
const archive = window.IMAGING_ARCHIVE || {};
const dicomWebRoot = archive.dicomWebRoot || 'http://127.0.0.1:8080/dicom-web';

window.config = {
  name: 'imaging-archive',
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: true,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 25 },
  showErrorDetails: 'always',
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'imaging-archive',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'imaging-archive',
      configuration: {
        friendlyName: 'imaging-archive',
        name: 'imaging-archive',
        qidoRoot: dicomWebRoot,
        wadoRoot: dicomWebRoot,
        wadoUriRoot: dicomWebRoot,
        // QIDO-RS answers includefield (PS3.18 §8.3.4.3), so OHIF can ask for what its lists show.
        qidoSupportsIncludeField: true,
        // Frames through WADO-RS (…/frames/N, PS3.18 §10.4.1.1.3), decoded in the browser.
        imageRendering: 'wadors',
        // 'wadors': thumbnails drawn from frames; 'thumbnail' / 'rendered': the server's JPEG of
        // …/thumbnail (PS3.18 §10.4.1.1.4) or …/rendered (§10.4.1.1.2); 'thumbnailDirect': <img> of
        // …/thumbnail.
        thumbnailRendering: archive.thumbnailRendering || 'wadors',
        thumbnailRequestStrategy: archive.thumbnailRequestStrategy || 'bulkDataRetrieve',
        // Series metadata on demand, at series level (…/series/{uid}/metadata).
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        supportsReject: false,
        // The archive is a full DICOMweb origin server, not a static file tree.
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        // Accept: multipart/related; type=application/octet-stream (no quotes around the type).
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
