"use strict";(self.rspackChunkinplace_restarter=self.rspackChunkinplace_restarter||[]).push([[700],{19(e,t,r){var n=r(20),a=r.n(n),o=r(21),c=(r.n(o))()(a());c.push([e.id,`.jp-InplaceRestarter-job {
  border: none;
  background: none;
  color: inherit;
  font: inherit;
  padding: 0 var(--jp-ui-padding, 4px);
  cursor: pointer;
  white-space: nowrap;
}

.jp-InplaceRestarter-job:hover {
  background: var(--jp-layout-color2);
}

.jp-InplaceRestarter-job.jp-mod-warning {
  background: var(--jp-warn-color1);
  color: var(--jp-ui-inverse-font-color1);
}

.jp-InplaceRestarter-details {
  font-family: var(--jp-code-font-family);
  white-space: pre-wrap;
  margin: 0;
}
`,""]),r.d(t,{},{A:c})},21(e){e.exports=function(e){var t=[];return t.toString=function(){return this.map(function(t){var r="",n=void 0!==t[5];return t[4]&&(r+="@supports (".concat(t[4],") {")),t[2]&&(r+="@media ".concat(t[2]," {")),n&&(r+="@layer".concat(t[5].length>0?" ".concat(t[5]):""," {")),r+=e(t),n&&(r+="}"),t[2]&&(r+="}"),t[4]&&(r+="}"),r}).join("")},t.i=function(e,r,n,a,o){"string"==typeof e&&(e=[[null,e,void 0]]);var c={};if(n)for(var i=0;i<this.length;i++){var s=this[i][0];null!=s&&(c[s]=!0)}for(var p=0;p<e.length;p++){var u=[].concat(e[p]);n&&c[u[0]]||(void 0!==o&&(void 0===u[5]||(u[1]="@layer".concat(u[5].length>0?" ".concat(u[5]):""," {").concat(u[1],"}")),u[5]=o),r&&(u[2]&&(u[1]="@media ".concat(u[2]," {").concat(u[1],"}")),u[2]=r),a&&(u[4]?(u[1]="@supports (".concat(u[4],") {").concat(u[1],"}"),u[4]=a):u[4]="".concat(a)),t.push(u))}},t}},20(e){e.exports=function(e){return e[1]}},13(e){var t=[];function r(e){for(var r=-1,n=0;n<t.length;n++)if(t[n].identifier===e){r=n;break}return r}function n(e,n){for(var a={},o=[],c=0;c<e.length;c++){var i=e[c],s=n.base?i[0]+n.base:i[0],p=a[s]||0,u="".concat(s," ").concat(p);a[s]=p+1;var l=r(u),d={css:i[1],media:i[2],sourceMap:i[3],supports:i[4],layer:i[5]};if(-1!==l)t[l].references++,t[l].updater(d);else{var f=function(e,t){var r=t.domAPI(t);return r.update(e),function(t){t?(t.css!==e.css||t.media!==e.media||t.sourceMap!==e.sourceMap||t.supports!==e.supports||t.layer!==e.layer)&&r.update(e=t):r.remove()}}(d,n);n.byIndex=c,t.splice(c,0,{identifier:u,updater:f,references:1})}o.push(u)}return o}e.exports=function(e,a){var o=n(e=e||[],a=a||{});return function(e){e=e||[];for(var c=0;c<o.length;c++){var i=r(o[c]);t[i].references--}for(var s=n(e,a),p=0;p<o.length;p++){var u=r(o[p]);0===t[u].references&&(t[u].updater(),t.splice(u,1))}o=s}}},15(e){var t={};e.exports=function(e,r){var n=function(e){if(void 0===t[e]){var r=document.querySelector(e);if(window.HTMLIFrameElement&&r instanceof window.HTMLIFrameElement)try{r=r.contentDocument.head}catch(e){r=null}t[e]=r}return t[e]}(e);if(!n)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");n.appendChild(r)}},17(e){e.exports=function(e){var t=document.createElement("style");return e.setAttributes(t,e.attributes),e.insert(t,e.options),t}},16(e,t,r){e.exports=function(e){var t=r.nc;t&&e.setAttribute("nonce",t)}},14(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var t=e.insertStyleElement(e);return{update:function(r){var n,a,o;n="",r.supports&&(n+="@supports (".concat(r.supports,") {")),r.media&&(n+="@media ".concat(r.media," {")),(a=void 0!==r.layer)&&(n+="@layer".concat(r.layer.length>0?" ".concat(r.layer):""," {")),n+=r.css,a&&(n+="}"),r.media&&(n+="}"),r.supports&&(n+="}"),(o=r.sourceMap)&&"u">typeof btoa&&(n+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(o))))," */")),e.styleTagTransform(n,t,e.options)},remove:function(){var e;null===(e=t).parentNode||e.parentNode.removeChild(e)}}}},18(e){e.exports=function(e,t){if(t.styleSheet)t.styleSheet.cssText=e;else{for(;t.firstChild;)t.removeChild(t.firstChild);t.appendChild(document.createTextNode(e))}}},12(e,t,r){var n=r(13),a=r.n(n),o=r(14),c=r.n(o),i=r(15),s=r.n(i),p=r(16),u=r.n(p),l=r(17),d=r.n(l),f=r(18),v=r.n(f),h=r(19),m={};m.styleTagTransform=v(),m.setAttributes=u(),m.insert=s().bind(null,"head"),m.domAPI=c(),m.insertStyleElement=d(),a()(h.A,m),h.A&&h.A.locals&&h.A.locals}}]);